//! Integration tests of `outrider-protocol`: the golden transcripts of each
//! protocol version still decode with today's types.

mod golden;
