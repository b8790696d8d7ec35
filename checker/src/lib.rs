//! Checker (see issue: checker). Empty until then.
