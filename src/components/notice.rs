//! A message shown where the user acted (weights, photo, labels, result, share); after the
//! model worker kept crashing, with a button that starts it again.

use yew::prelude::*;

use crate::context::AppCtx;
use crate::state::{Action, Area};

#[derive(Properties, PartialEq)]
pub struct NoticeProps {
    pub area: Area,
}

#[component]
pub fn Notice(props: &NoticeProps) -> Html {
    let Some(ctx) = use_context::<AppCtx>() else {
        return html! {};
    };
    let Some(n) = ctx.state.notice(props.area).cloned() else {
        return html! {};
    };
    let dismiss = {
        let ctx = ctx.clone();
        let area = props.area;
        Callback::from(move |_| ctx.dispatch(Action::Dismiss(area)))
    };
    let retry = (ctx.state.life.gave_up == Some(props.area)).then(|| {
        let ctx = ctx.clone();
        Callback::from(move |_| ctx.dispatch(Action::RetryWorker))
    });
    let area = format!("{:?}", props.area).to_lowercase();
    html! {
        <div class={classes!("notice", n.error.then_some("error"))} role={if n.error { "alert" } else { "status" }} data-area={area}>
            <span class="notice-text">{ n.text }</span>
            if let Some(retry) = retry {
                <button class="secondary" data-role="restart-worker" onclick={retry}>{ "Start it again" }</button>
            }
            <button class="notice-close" title="Dismiss" aria-label="Dismiss" onclick={dismiss}>{ "×" }</button>
        </div>
    }
}
