"""Domain rules, pure: values in, values out (no Flask, no Redis, no key names)."""
