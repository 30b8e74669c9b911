//! Property tests placeholder (filled in the next step).
