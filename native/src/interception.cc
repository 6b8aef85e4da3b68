// Placeholder, replaced by the real interception.
