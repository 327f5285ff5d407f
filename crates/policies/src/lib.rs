//! Control-plane policy implementations for factorysim. They implement traits defined in
//! `sim-core`; sim-core never depends on this crate.
