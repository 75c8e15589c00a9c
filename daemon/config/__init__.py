"""Settings: the settings directory, config.toml and secrets validated into one Config, workspaces, live reload."""
