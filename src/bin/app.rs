//! UI thread entry point (Trunk builds it as the main wasm module).

fn main() {
    clipdino_web::start_app();
}
