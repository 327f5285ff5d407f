//! Trace readers, writers and workload fitting for factorysim.
