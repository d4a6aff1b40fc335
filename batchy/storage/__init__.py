"""The only code that speaks Redis: keys, Lua scripts, connections, the commit loop and the stores."""
