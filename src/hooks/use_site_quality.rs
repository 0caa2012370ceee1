//! Ask the worker for the site's quality report (`models/quality.json`) once it runs, for the
//! fidelity line and the precision setting of the weights panel. Only pages on the site's own
//! weights ask for it. (The worker fetches it beside the bundles it probes; a site without a
//! report answers 404, which is no error.)

use yew::prelude::*;

use crate::context::AppCtx;
use crate::protocol::Request;
use crate::state::quality::MAX_REPORT_BYTES;
use crate::state::weights::SITE_QUALITY;
use crate::state::{SiteQuality, WeightsSource};
use crate::url::resolve;

#[hook]
pub fn use_site_quality(ctx: &AppCtx) {
    let ctx = ctx.clone();
    let s = &*ctx.state;
    let wanted = s.worker_ready && s.weights_source == WeightsSource::Default;
    use_effect_with(wanted, move |wanted| {
        if *wanted && ctx.state.site_quality == SiteQuality::Unknown {
            let id = ctx.worker.next_id();
            ctx.worker.send(
                &Request::ReadSiteFile {
                    id,
                    url: resolve(SITE_QUALITY),
                    max_bytes: MAX_REPORT_BYTES as u64,
                },
                vec![],
            );
        }
    });
}
