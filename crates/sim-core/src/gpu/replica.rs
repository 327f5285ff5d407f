//! (filled in by the GPU data-plane work)
