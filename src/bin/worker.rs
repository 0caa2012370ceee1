//! Model worker entry point (Trunk builds it with `data-type="worker"`).

fn main() {
    clipdino_web::start_worker();
}
