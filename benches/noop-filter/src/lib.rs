//! The floor of `cargo xtask load` (issue 16): a proxy-wasm filter that reads one request header
//! (`authorization`) and lets every request through. Built with the same SDK, target and Envoy
//! runtime as Tessera, it is what any Wasm filter costs before it decides anything; the load
//! report gives every Wasm configuration as a fraction of it.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ReadsOneHeader))
    }
}

struct ReadsOneHeader;

impl Context for ReadsOneHeader {}

impl HttpContext for ReadsOneHeader {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        std::hint::black_box(self.get_http_request_header_bytes("authorization"));
        Action::Continue
    }
}
