//! Load generator and bench helpers (filled in by the bench issue work).
