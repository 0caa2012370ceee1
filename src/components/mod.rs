//! UI components, one per file. Each reads the app state and worker from [`crate::context::AppCtx`].

pub mod app;
pub mod kmeans_view;
pub mod label_chip;
pub mod labels_editor;
pub mod legend;
pub mod method_picker;
pub mod notice;
pub mod overlay;
pub mod photo_panel;
pub mod settings_panel;
pub mod share_button;
pub mod status_line;
pub mod viewer;
pub mod weights_panel;

pub use app::App;
