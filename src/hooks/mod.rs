//! Hooks: the worker bridge, the effects that turn state into worker requests, the URL
//! fragment sync, the site's quality report, page-wide file drop / paste, and the file-picker button of the panels.

pub mod use_file_picker;
pub mod use_fragment_sync;
pub mod use_page_files;
pub mod use_request_driver;
pub mod use_site_quality;
pub mod use_worker;

pub use use_file_picker::{use_file_picker, FilePicker};
pub use use_fragment_sync::use_fragment_sync;
pub use use_page_files::use_page_files;
pub use use_request_driver::use_request_driver;
pub use use_site_quality::use_site_quality;
pub use use_worker::use_worker;
