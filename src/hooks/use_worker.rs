//! The model worker's handle for the page: created on first render, kept for the page's
//! lifetime (see [`crate::bridge`]).

use yew::prelude::*;

use crate::bridge::{self, WorkerHandle};
use crate::state::State;

/// Create the worker on first render and keep it for the page's lifetime.
#[hook]
pub fn use_worker(dispatch: UseReducerDispatcher<State>) -> WorkerHandle {
    let handle = use_memo((), move |_| bridge::create(dispatch));
    (*handle).clone()
}
