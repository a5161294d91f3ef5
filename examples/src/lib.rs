//! Runnable examples of fixnn live beside this crate as `[[example]]` targets.
