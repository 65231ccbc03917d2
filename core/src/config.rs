//! The plugin configuration as written by operators (one JSON document), before compilation.
//!
//! Unknown fields are errors so that a typo never silently disables a check, and every error names
//! its JSON path (`issuers[1].audiences`), because the operator only sees a log line.

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::error::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mode: Mode,
    pub issuers: Vec<IssuerConfig>,
    pub schema: String,
    pub policies: PolicySource,
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub forward: ForwardConfig,
    #[serde(default)]
    pub limits: Limits,
    /// RFC 9728 protected-resource metadata the filter serves and advertises in 401s.
    #[serde(default)]
    pub resource_metadata: Option<ResourceMetadata>,
    /// Human approval of requests denied only by `@approval("required")` policies.
    #[serde(default)]
    pub approval: Option<ApprovalConfig>,
    /// MCP tool arguments with a format (`path`, `email`, `url`): tool → argument → format.
    /// Cedar sees them in canonical form; a value that does not parse is refused (formats.rs).
    #[serde(default)]
    pub argument_formats: BTreeMap<String, BTreeMap<String, String>>,
    /// Cutting tokens off before they expire: OAuth Token Status Lists and security events.
    #[serde(default)]
    pub revocation: Option<RevocationConfig>,
    /// Where state shared by every replica lives (default: the proxy's shared data, one
    /// process).
    #[serde(default)]
    pub store: Option<StoreConfig>,
    /// MCP sessions known to every replica: session ids sealed for their owner.
    #[serde(default)]
    pub sessions: Option<SessionsConfig>,
    /// DPoP (RFC 9449): tokens bound to a key the client proves it holds on every request.
    #[serde(default)]
    pub dpop: Option<DpopConfig>,
    /// Facts about the connection and request that Cedar sees in `context.request`: the
    /// source, the TLS peer, headers the operator lists.
    #[serde(default)]
    pub connection: ConnectionConfig,
}

/// `dpop`: how DPoP proofs (RFC 9449 §4) are checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopConfig {
    /// Accepted proof algorithms (asymmetric): `ES256`, `ES384`, `EdDSA`.
    #[serde(default = "default_dpop_algs")]
    pub algs: Vec<String>,
    /// A proof's `iat` at most this many seconds old.
    #[serde(default = "default_dpop_max_age")]
    pub max_age_s: u64,
    /// A proof's `iat` at most this many seconds ahead of the proxy's clock.
    #[serde(default = "default_dpop_skew")]
    pub clock_skew_s: u64,
    /// `scheme://authority` a proof's `htu` may name (the public origins of this gateway, when
    /// it sits behind another proxy). Empty: the request's own `:scheme` and `:authority`.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Server nonces (RFC 9449 §9): proofs must carry one Tessera issued.
    #[serde(default)]
    pub nonce: Option<DpopNonceConfig>,
    /// Largest `DPoP` header accepted.
    #[serde(default = "default_max_proof_bytes")]
    pub max_proof_bytes: usize,
}

fn default_dpop_algs() -> Vec<String> {
    vec!["ES256".into(), "ES384".into(), "EdDSA".into()]
}
fn default_dpop_max_age() -> u64 {
    60
}
fn default_dpop_skew() -> u64 {
    5
}
fn default_max_proof_bytes() -> usize {
    4096
}

/// `dpop.nonce`: nonces are HMAC-SHA-256 of their issue time, so that every replica with the
/// keys accepts every replica's nonces without a store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopNonceConfig {
    /// Base64 keys of at least 32 random bytes, the same on every replica: the first makes
    /// nonces, every one checks them (rotation).
    pub keys: Vec<String>,
    /// How long a nonce is accepted.
    #[serde(default = "default_nonce_ttl")]
    pub ttl_s: u64,
}

fn default_nonce_ttl() -> u64 {
    300
}

/// `connection`: what Cedar sees of the connection and of headers in `context.request`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Request headers copied into `context.request.headers` (lower-case names; each may appear
    /// at most once in a request). Each must be declared in the schema.
    #[serde(default)]
    pub request_headers: Vec<String>,
    /// Whether the listener verifies client certificates against a CA
    /// (`require_client_certificate` and a `validation_context` with `trusted_ca`). The filter
    /// cannot see that itself: this says what `context.request.tls.verified` reports, and only
    /// verified certificates yield a SPIFFE ID.
    #[serde(default)]
    pub client_certificates: ClientCertificates,
    /// Trust domains whose X.509-SVIDs (URI SAN `spiffe://<domain>/…`) are accepted as
    /// `context.request.tls.spiffe_id`.
    #[serde(default)]
    pub spiffe_trust_domains: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificates {
    #[default]
    Unverified,
    Verified,
}

/// Whether tokens must be bound to a key the client proves it holds (`cnf`: DPoP or a client
/// certificate), per issuer and per route.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProofOfPossession {
    /// Bound tokens are proven; unbound (bearer) tokens are accepted too.
    #[default]
    Optional,
    /// Only bound tokens, proven.
    Required,
}

/// `sessions`: the `Mcp-Session-Id` a client sees is the server's id sealed (HMAC-SHA-256) for
/// the identity that created the session, so that no replica needs a stored binding.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Base64 keys of at least 32 random bytes, the same on every replica: the first seals,
    /// every one opens (rotation).
    pub seal_keys: Vec<String>,
}

/// `store`: a store every replica of a fleet shares.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub etcd: EtcdConfig,
}

/// `store.etcd`: etcd v3 through its JSON gateway, reached through an Envoy cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// The Envoy cluster of etcd's client port.
    pub cluster: String,
    /// `:authority` of the calls (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    /// Every key Tessera writes starts with this.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    #[serde(default = "default_etcd_timeout_ms")]
    pub timeout_ms: u64,
    /// Records expire with leases shared by every record ending in the same bucket of this many
    /// seconds (not one lease per record).
    #[serde(default = "default_lease_bucket_s")]
    pub lease_bucket_s: u64,
}

fn default_etcd_prefix() -> String {
    "tessera/".into()
}
fn default_etcd_timeout_ms() -> u64 {
    500
}
fn default_lease_bucket_s() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceMetadata {
    /// The protected resource's identifier, e.g. `https://mcp.example.com/mcp`.
    pub resource: String,
    pub authorization_servers: Vec<String>,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    #[serde(default)]
    pub resource_name: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denials are sent to the client.
    #[default]
    Enforce,
    /// Decisions are made, counted and logged, but every request is forwarded.
    Shadow,
}

/// Cedar policy text: one string, or named documents (file name → text) so that errors can name the
/// file they come from.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PolicySource {
    Text(String),
    Files(BTreeMap<String, String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// The issuer's keys fetched from its identity provider (a JWKS, or OIDC discovery first)
    /// through an Envoy cluster, instead of inline `jwks`.
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// base64url (or standard base64) HMAC secret; the only way HS256 tokens are accepted.
    #[serde(default)]
    pub hmac_secret: Option<String>,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_s: u64,
    #[serde(default)]
    pub max_ttl_s: Option<u64>,
    #[serde(default)]
    pub required_claims: Vec<String>,
    pub principal: PrincipalConfig,
    /// Claims copied into `context.token.claims`.
    #[serde(default)]
    pub claims: Vec<String>,
    /// A token whose value of this claim is `true` is accepted once (its `jti` is recorded).
    #[serde(default)]
    pub single_use_claim: Option<String>,
    /// RFC 8693 `act` chains: honoured only when set (then the current actor is the principal);
    /// a token with `act` from an issuer without it is refused.
    #[serde(default)]
    pub delegation: Option<DelegationConfig>,
    /// The identity namespace of this issuer's principals, groups and actors: Cedar entity ids
    /// are `"<namespace>|<id>"`. Default: the `issuer` itself, so two issuers never name the same
    /// principal; issuers that share a namespace (set explicitly) share identities.
    #[serde(default)]
    pub identity_namespace: Option<String>,
    /// Task claims: task id, intent, RFC 9396 tool details.
    #[serde(default)]
    pub task: TaskConfig,
    /// The JOSE `typ` this issuer's access tokens must have (RFC 8725 §3.11), e.g. `at+jwt`
    /// (RFC 9068). Unset: absent, `JWT` or `at+jwt`. Tokens typed for anything else (logout,
    /// security events, status lists, DPoP proofs, approvals) are never access tokens.
    #[serde(default)]
    pub typ: Option<String>,
    /// `required`: this issuer's tokens must be bound (`cnf`) and proven on every request.
    #[serde(default)]
    pub proof_of_possession: ProofOfPossession,
    /// JWT-SVIDs: this issuer is a SPIFFE trust domain's, and the principal claim of its tokens
    /// (`sub`, as `principal.claim` should say) must be a workload's SPIFFE ID in this trust
    /// domain.
    #[serde(default)]
    pub spiffe_trust_domain: Option<String>,
    /// A workload that presents this issuer's token over a verified mutual-TLS connection (its
    /// X.509-SVID, `connection.spiffe_trust_domains`) is the token's outermost actor: the
    /// principal is `Workload::"spiffe|<SPIFFE ID>"`, acting for the token's subject and actors.
    #[serde(default)]
    pub workload_actor: bool,
    /// Envoy's `jwt_authn` verifies this issuer's tokens and puts each verified payload in the
    /// request's dynamic metadata under this key (its provider's `payload_in_metadata`; Istio's
    /// `RequestAuthentication` uses the issuer). Tessera then checks no signature and takes no
    /// keys: it admits a token only when its payload is the one `jwt_authn` verified for this
    /// request, and applies its own claim rules to it (`jwt_authn.rs`).
    #[serde(default)]
    pub jwt_authn_payload: Option<String>,
    /// With `jwt_authn_payload`: the provider's `header_in_metadata` key; the token's JOSE header
    /// must then be the one `jwt_authn` verified too (else the header, `typ` included, is only
    /// the client's word).
    #[serde(default)]
    pub jwt_authn_header: Option<String>,
}

fn default_clock_skew() -> u64 {
    // Envoy's jwt_authn default.
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Cedar entity type of the principal: `User`, `Agent` or `Workload` (any type the schema has).
    #[serde(rename = "type")]
    pub entity_type: String,
    /// Claim whose value is the entity id.
    #[serde(default = "default_principal_claim")]
    pub claim: String,
    /// Claim holding group names; each becomes a `Group` parent of the principal.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Entity attribute name → claim name.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

fn default_principal_claim() -> String {
    "sub".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    pub prefix: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub kind: RouteKind,
    /// Sensitive routes: tokens issued (`iat`) longer ago than this are refused (401).
    #[serde(default)]
    pub max_token_age_s: Option<u64>,
    /// As Envoy's `RouteMatch.case_sensitive`: `false` says the upstream ignores the case of
    /// paths, so policies see `context.request.path` lower-cased on this route (a `like`
    /// pattern written in lower case then holds for `/Orders/1/REFUND`). Default `true`: the
    /// path keeps its case, as most upstreams tell `/share/abc` from `/share/ABC`.
    #[serde(default = "default_true")]
    pub case_sensitive: bool,
    /// `required`: only bound tokens (`cnf`), proven, on this route.
    #[serde(default)]
    pub proof_of_possession: ProofOfPossession,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A plain API: the HTTP method is the Cedar action on the `Route`.
    #[default]
    Http,
    /// An MCP Streamable HTTP endpoint: every JSON-RPC message of a POST is decided on its own.
    Mcp,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// A verified token and a Cedar permit are required.
    #[default]
    Required,
    /// Public route (health checks): no token, no Cedar decision.
    None,
    /// The peer's X.509-SVID authenticates (README "Workloads"): no token; a verified client
    /// certificate whose URI SAN is a SPIFFE ID of a listed trust domain
    /// (`connection.spiffe_trust_domains`) is the principal, `Workload::"spiffe|<SPIFFE ID>"`,
    /// and a Cedar permit is required. HTTP routes only.
    Workload,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Header name → source (`principal`, `principal_id`, `principal_type`, `issuer`, `subject`,
    /// `scopes`, `claim:<name>`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub drop_authorization: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Verified tokens kept (0 turns the cache off).
    #[serde(default = "default_token_cache_entries")]
    pub token_cache_entries: usize,
    /// Estimated bytes the cached tokens may hold.
    #[serde(default = "default_token_cache_bytes")]
    pub token_cache_bytes: usize,
    /// MCP request bodies are buffered up to this size; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted in an MCP body.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// Most `act` levels (RFC 8693 actors) a token may carry; deeper chains get 401.
    #[serde(default = "default_max_delegation_depth")]
    pub max_delegation_depth: usize,
    /// An MCP session binding unused for this long expires (the session id is then unknown).
    #[serde(default = "default_session_idle_s")]
    pub session_idle_s: u64,
    /// An MCP session binding expires this long after its creation, used or not.
    #[serde(default = "default_session_ttl_s")]
    pub session_ttl_s: u64,
    /// Most messages in one JSON-RPC batch; a longer batch is refused (-32600).
    #[serde(default = "default_max_batch_messages")]
    pub max_batch_messages: usize,
    /// Most live MCP session bindings each worker thread keeps; past it, a new session is
    /// refused (503) until old ones expire, so memory stays bounded under a flood of
    /// `initialize`.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Most live MCP session bindings of one identity (principal, on whose behalf, actors, task)
    /// per worker thread, so that one caller cannot use up `max_sessions`.
    #[serde(default = "default_max_sessions_per_principal")]
    pub max_sessions_per_principal: usize,
    /// Largest JWKS document (`remote_jwks`) accepted, in bytes.
    #[serde(default = "default_max_jwks_bytes")]
    pub max_jwks_bytes: usize,
    /// Most keys a fetched JWKS may hold.
    #[serde(default = "default_max_jwks_keys")]
    pub max_jwks_keys: usize,
    /// Most HTTP calls one worker keeps waiting for on behalf of requests (keys refetched for an
    /// unknown `kid`, status lists not yet fetched); past it such a request gets 503.
    #[serde(default = "default_max_pending_calls")]
    pub max_pending_calls: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_token_bytes: default_max_token_bytes(),
            token_cache_entries: default_token_cache_entries(),
            token_cache_bytes: default_token_cache_bytes(),
            max_body_bytes: default_max_body_bytes(),
            max_json_depth: default_max_json_depth(),
            max_delegation_depth: default_max_delegation_depth(),
            session_idle_s: default_session_idle_s(),
            session_ttl_s: default_session_ttl_s(),
            max_batch_messages: default_max_batch_messages(),
            max_sessions: default_max_sessions(),
            max_sessions_per_principal: default_max_sessions_per_principal(),
            max_jwks_bytes: default_max_jwks_bytes(),
            max_jwks_keys: default_max_jwks_keys(),
            max_pending_calls: default_max_pending_calls(),
        }
    }
}

fn default_max_jwks_bytes() -> usize {
    64 * 1024
}

fn default_max_jwks_keys() -> usize {
    32
}

fn default_max_pending_calls() -> usize {
    64
}

fn default_max_batch_messages() -> usize {
    64
}

fn default_max_sessions() -> usize {
    10_000
}

fn default_max_sessions_per_principal() -> usize {
    100
}

fn default_session_idle_s() -> u64 {
    3600
}

fn default_session_ttl_s() -> u64 {
    24 * 3600
}

fn default_max_delegation_depth() -> usize {
    DEFAULT_MAX_DELEGATION_DEPTH
}

fn default_token_cache_entries() -> usize {
    10_000
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

fn default_max_json_depth() -> usize {
    32
}

fn default_token_cache_bytes() -> usize {
    8 * 1024 * 1024
}

fn default_max_token_bytes() -> usize {
    8 * 1024
}

impl Config {
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(
                if path == "." { String::new() } else { path },
                e.into_inner().to_string(),
            )
        })
    }
}

/// `limits.max_delegation_depth` unless configured.
pub const DEFAULT_MAX_DELEGATION_DEPTH: usize = 8;

/// `issuers[].delegation`: how a token's `act` chain becomes the Cedar principal.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationConfig {
    /// Cedar entity type of the current actor (the principal of a delegated token).
    #[serde(default = "default_actor_type")]
    pub actor_type: String,
}

impl Default for DelegationConfig {
    fn default() -> Self {
        DelegationConfig {
            actor_type: default_actor_type(),
        }
    }
}

fn default_actor_type() -> String {
    "Agent".into()
}

/// `issuers[].task`: where a token says which task it is for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    #[serde(default = "default_id_claim")]
    pub id_claim: String,
    #[serde(default = "default_intent_claim")]
    pub intent_claim: String,
    /// Authorization details of this `type` name a tool in their `identifier`.
    #[serde(default = "default_tool_detail_type")]
    pub tool_detail_type: String,
    /// Members of a tool detail copied into `context.task.detail`, with their Cedar type
    /// (`Long`, `String`, `Bool`, `Set<String>`).
    #[serde(default)]
    pub detail_fields: BTreeMap<String, String>,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            id_claim: default_id_claim(),
            intent_claim: default_intent_claim(),
            tool_detail_type: default_tool_detail_type(),
            detail_fields: BTreeMap::new(),
        }
    }
}

fn default_id_claim() -> String {
    "task_id".into()
}

fn default_intent_claim() -> String {
    "intent".into()
}

fn default_tool_detail_type() -> String {
    "mcp_tool".into()
}

/// `approval` in the configuration: the issuer of approvals and how a client presents one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// Exact `iss` of approvals. Approvals are verified with their own keys below, never with a
    /// bearer issuer's, so an approval is never a bearer token and a bearer token never an
    /// approval.
    pub issuer: String,
    /// Audiences an approval must name (one of them).
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    #[serde(default)]
    pub hmac_secret: Option<String>,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_s: u64,
    /// Longest lifetime (`exp - iat`) an approval may have.
    #[serde(default = "default_approval_max_ttl")]
    pub max_ttl_s: u64,
    /// Request header carrying the approval on the retry.
    #[serde(default = "default_header")]
    pub header: String,
    /// Claim holding the digest of the approved request.
    #[serde(default = "default_digest_claim")]
    pub digest_claim: String,
    /// Claim naming the approver (`context.approval.approver`).
    #[serde(default = "default_approver_claim")]
    pub approver_claim: String,
    /// Where to tell approvers that an approval is asked for.
    #[serde(default)]
    pub webhook: Option<Webhook>,
    /// The JOSE `typ` an approval must have: approvals and access tokens are never
    /// interchangeable (an access issuer refuses this type, and approvals need it).
    #[serde(default = "default_typ")]
    pub typ: String,
    /// The approval page an MCP 2026-07-28 client sends the person to: a tool call held only
    /// by `@approval("required")` is answered `input_required` with a URL-mode elicitation of
    /// `<page>?digest=<digest>`. Without it such a client gets `approval_required`, as older
    /// clients do.
    #[serde(default)]
    pub page: Option<String>,
    /// Where the filter takes approvals the page posts (the signed approval is the body), for
    /// the client's retry of the approved call. Served only with `page`.
    #[serde(default = "default_approval_receiver")]
    pub receiver_path: String,
}

fn default_approval_receiver() -> String {
    "/.well-known/tessera/approvals".into()
}

/// `approval.webhook`: an Envoy cluster that receives each approval request as a JSON POST
/// (fire and forget: its answer is not waited for, and a failure only logs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// The Envoy cluster (`dispatch_http_call` target).
    pub cluster: String,
    #[serde(default = "default_webhook_path")]
    pub path: String,
    /// `:authority` of the call (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_webhook_path() -> String {
    "/approval-requests".into()
}
fn default_webhook_timeout_ms() -> u64 {
    2000
}

fn default_approval_max_ttl() -> u64 {
    300
}
fn default_typ() -> String {
    APPROVAL_TYP.into()
}

/// The default `typ` of approvals.
pub const APPROVAL_TYP: &str = "approval+jwt";

fn default_header() -> String {
    "x-tessera-approval".into()
}

fn default_digest_claim() -> String {
    "approval_digest".into()
}
fn default_approver_claim() -> String {
    "sub".into()
}

/// `issuers[].remote_jwks`: where and how often the issuer's keys are fetched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// The Envoy cluster that reaches the identity provider.
    pub cluster: String,
    /// The JWKS path, or with `discovery` the OIDC discovery document's (default
    /// `/.well-known/openid-configuration`).
    #[serde(default)]
    pub path: Option<String>,
    /// `:authority` of the fetch (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    /// `path` is an OpenID Connect discovery document: its `issuer` must be this issuer, and its
    /// `jwks_uri` is fetched next, through the same cluster.
    #[serde(default)]
    pub discovery: bool,
    /// Keys are fetched again this long after the last good fetch.
    #[serde(default = "default_refresh_s")]
    pub refresh_s: u64,
    #[serde(default = "default_fetch_timeout_ms")]
    pub timeout_ms: u64,
    /// When refreshes fail, the last good keys serve this long past `refresh_s`; then the
    /// issuer's tokens get 503.
    #[serde(default = "default_max_stale_s")]
    pub max_stale_s: u64,
    /// A token with a `kid` the keys lack makes the keys be fetched again, at most this often.
    #[serde(default = "default_refetch_interval_s")]
    pub refetch_interval_s: u64,
}

fn default_refresh_s() -> u64 {
    300
}
fn default_fetch_timeout_ms() -> u64 {
    5000
}
fn default_max_stale_s() -> u64 {
    3600
}
fn default_refetch_interval_s() -> u64 {
    30
}

/// `revocation`: status lists checked per token, and security events that revoke tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    #[serde(default)]
    pub status_list: Option<StatusListConfig>,
    #[serde(default)]
    pub events: Option<EventsConfig>,
    /// How long a revocation is kept: at least the longest lifetime of a token it can affect.
    #[serde(default = "default_retain_s")]
    pub retain_s: u64,
    /// Most revocations one worker records (the store bounds them per worker).
    #[serde(default = "default_max_revocations")]
    pub max_entries: usize,
}

fn default_retain_s() -> u64 {
    86_400
}
fn default_max_revocations() -> usize {
    10_000
}

/// `revocation.status_list` (draft-ietf-oauth-status-list).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusListConfig {
    /// Who may sign status list tokens, with their keys.
    pub signers: Vec<SignerConfig>,
    /// Where lists are fetched: a token's `status.status_list.uri` must start with one
    /// `uri_prefix`.
    pub sources: Vec<StatusListSource>,
    #[serde(default = "default_list_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a list that states neither `ttl` nor `exp` is fresh.
    #[serde(default = "default_list_ttl_s")]
    pub default_ttl_s: u64,
    /// Past its freshness, a list that cannot be refreshed is still used this long.
    #[serde(default = "default_list_stale_s")]
    pub max_stale_s: u64,
    /// A token whose list cannot be had passes (logged) instead of getting 503.
    #[serde(default)]
    pub fail_open: bool,
    /// Largest status list token accepted, in bytes (its decompressed list: 16 times that).
    #[serde(default = "default_list_max_bytes")]
    pub max_bytes: usize,
}

fn default_list_timeout_ms() -> u64 {
    2000
}
fn default_list_ttl_s() -> u64 {
    300
}
fn default_list_stale_s() -> u64 {
    60
}
fn default_list_max_bytes() -> usize {
    1024 * 1024
}

/// A signer of documents Tessera fetches or receives (status lists, security events).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    pub issuer: String,
    pub jwks: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusListSource {
    pub uri_prefix: String,
    pub cluster: String,
    /// `:authority` of the fetch (default: the uri's host).
    #[serde(default)]
    pub authority: Option<String>,
}

/// `revocation.events`: Security Event Tokens (RFC 8417) from one transmitter, pushed (RFC
/// 8935) to a path the filter serves, or polled (RFC 8936).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// The transmitter: `iss` of its SETs.
    pub issuer: String,
    /// A SET must name one of these in `aud`.
    pub audiences: Vec<String>,
    pub jwks: serde_json::Value,
    /// The path the filter answers SETs pushed to it on (never forwarded).
    #[serde(default)]
    pub receiver_path: Option<String>,
    #[serde(default)]
    pub poll: Option<PollConfig>,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_s: u64,
}

/// `revocation.events.poll`: RFC 8936 polling of the transmitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    pub cluster: String,
    pub path: String,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default = "default_poll_interval_s")]
    pub interval_s: u64,
    #[serde(default = "default_list_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_poll_max_events")]
    pub max_events: u64,
}

fn default_poll_interval_s() -> u64 {
    5
}
fn default_poll_max_events() -> u64 {
    100
}
