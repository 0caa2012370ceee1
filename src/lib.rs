//! The browser app (placeholder until the app lands).
