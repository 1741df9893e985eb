//! `haimg up`, `status`, `down`: the rendered cluster, applied to AWS.
//!
//! `up` renders the tree in memory exactly as `render --all` writes it, reads the JSON
//! back into typed inputs ([`desired`]), observes what exists ([`observe`]), plans the
//! difference ([`plan`], pure) and applies it ([`apply`]). `status` reads and judges
//! ([`status`]); `down` inventories by name and tag and deletes in reverse order ([`down`]).

pub mod apply;
pub mod cmd;
pub mod desired;
pub mod down;
pub mod observe;
pub mod plan;
pub mod status;
