"""The Slack edge: listeners, middleware, Block Kit views and the one error handler."""
