//! Live pages: server-sent events that carry a page's body again whenever it changed (checked every two
//! seconds), for htmx's SSE extension to swap in. A page without JavaScript simply stays as loaded.

use super::runs::RunsQuery;
use super::{Console, Session};
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use maud::Markup;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

const EVERY: Duration = Duration::from_secs(2);

/// Renders every [`EVERY`] and sends the HTML when it differs from the last render (the first render, on
/// connecting, is what the page was loaded with, so it is not sent). Stops when rendering fails: the page then
/// stays as it is.
fn changes<F, Fut>(render: F) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Option<Markup>> + Send,
{
    let stream = futures_util::stream::unfold((render, None::<String>), |(render, mut last)| async move {
        loop {
            if last.is_some() {
                tokio::time::sleep(EVERY).await;
            }
            let html = render().await?.into_string();
            match &last {
                Some(previous) if *previous == html => {}
                Some(_) => {
                    return Some((Ok(Event::default().event("update").data(html.clone())), (render, Some(html))));
                }
                None => last = Some(html),
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub(super) async fn overview(State(console): State<Console>, _: Session) -> impl axum::response::IntoResponse {
    changes(move || {
        let console = console.clone();
        async move { super::overview::body(&console).await.ok() }
    })
}

pub(super) async fn queue(
    State(console): State<Console>,
    _: Session,
    Query(query): Query<RunsQuery>,
) -> impl axum::response::IntoResponse {
    changes(move || {
        let (console, query) = (console.clone(), query.clone());
        async move { super::queue::body(&console, &query).await.ok().and_then(Result::ok) }
    })
}

pub(super) async fn run(
    State(console): State<Console>,
    _: Session,
    Path(id): Path<String>,
) -> impl axum::response::IntoResponse {
    changes(move || {
        let (console, id) = (console.clone(), id.clone());
        async move { super::runs::detail_body(&console, &id).await.ok().flatten() }
    })
}
