//! The library target exists so that `handoff-user` can name this crate as a build dependency
//! (which makes cargo rebuild the object when these sources change); the programs are in the
//! `handoff` binary target.
#![no_std]
