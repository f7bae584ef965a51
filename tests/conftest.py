pytest_plugins = ["ripplerec.testing"]
