//! The proxy environment variables, which `Proxy::FromEnvironment` (the default) reads: this
//! process's own (the environment is process-wide, so a binary that sets them runs its cases
//! one after another) and a child's (the `minch` binary's, in the CLI tests).

/// The proxy variables minch reads, in both spellings.
pub const PROXY_VARIABLES: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// Sets exactly these proxy variables in this process: every other one of
/// [`PROXY_VARIABLES`], and `REQUEST_METHOD` (which marks a CGI script, where `HTTP_PROXY` is
/// not read), is removed.
pub fn set_proxy_environment(vars: &[(&str, &str)]) {
    for name in PROXY_VARIABLES.into_iter().chain(["REQUEST_METHOD"]) {
        std::env::remove_var(name);
    }
    for (name, value) in vars {
        std::env::set_var(name, value);
    }
}
