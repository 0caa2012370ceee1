//! Hooks: the worker bridge, the effects that turn state into worker requests, the URL
//! fragment sync, and page-wide file drop / paste.

pub mod use_fragment_sync;
pub mod use_page_files;
pub mod use_request_driver;
pub mod use_worker;

pub use use_fragment_sync::use_fragment_sync;
pub use use_page_files::use_page_files;
pub use use_request_driver::use_request_driver;
pub use use_worker::{use_worker, WorkerHandle};
