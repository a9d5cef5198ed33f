//! The status page (`GET /`): one page for an on-call engineer — hosts with their online
//! state, labels, bundle versions and last contact; a live feed of actions and violations;
//! drift and policies. It is plain HTML, CSS and JavaScript embedded in the binary
//! (`coordinator/assets/`, no CDN, no build step), and it holds no data itself: the script
//! asks the REST API for everything with the token the engineer gives it (a form, kept in
//! the browser's `localStorage`, or `#token=…` in the address), and reads
//! `GET /api/v1/events` with `fetch()` (browsers' `EventSource` cannot send
//! `Authorization`), resuming with `Last-Event-ID` after a lost connection. So the page
//! and its assets are open ([`crate::http::routes::ROUTES`]); every data request carries the
//! token.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | the page (`text/html`) |
//! | `GET /assets/status.css` | its style sheet (`text/css`) |
//! | `GET /assets/status.js` | its script (`text/javascript`) |
//!
//! Every answer has `Cache-Control: no-cache` (a new coordinator's page is picked up at
//! once) and a Content-Security-Policy that lets the page load only its own assets and
//! talk only to this coordinator.

use warp::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// The page.
pub const HTML: &str = include_str!("../../../assets/status.html");
/// Its style sheet.
pub const CSS: &str = include_str!("../../../assets/status.css");
/// Its script.
pub const JS: &str = include_str!("../../../assets/status.js");

/// Where the page may load from and talk to: itself only, no inline scripts or styles.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page.
pub fn page() -> Response {
    asset(HTML, "text/html; charset=utf-8")
}

/// `GET /assets/status.css`: the page's style sheet.
pub fn stylesheet() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

/// `GET /assets/status.js`: the page's script.
pub fn script() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

/// `body` with its content type, `Cache-Control: no-cache` and the security headers.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = warp::reply::with_status(body, StatusCode::OK).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_have_their_content_types_and_no_cache() {
        for (response, kind) in [
            (page(), "text/html"),
            (stylesheet(), "text/css"),
            (script(), "text/javascript"),
        ] {
            assert_eq!(response.status(), StatusCode::OK);
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            assert!(header("content-type").starts_with(kind), "{kind}");
            assert_eq!(header("cache-control"), "no-cache");
            assert!(header("content-security-policy").contains("connect-src 'self'"));
        }
    }

    #[test]
    fn the_page_loads_its_own_assets_and_nothing_else() {
        assert!(HTML.contains("/assets/status.css") && HTML.contains("/assets/status.js"));
        for text in [HTML, CSS, JS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        // Data goes into the DOM as text, never as markup.
        assert!(!JS.contains("innerHTML") && !JS.contains("insertAdjacentHTML"));
    }
}
