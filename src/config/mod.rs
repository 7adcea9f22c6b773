//! The `.mill` config: parsing, validation, diff against stored state.
