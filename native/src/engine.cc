// Placeholder, replaced by the real engine.
