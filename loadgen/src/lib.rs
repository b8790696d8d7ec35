//! Load generator (see issue: load generator). Empty until then.
