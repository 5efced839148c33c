"""The organization's side of gradlift: an HTTP client for the service and the commands built on it
(`gradlift finetune/upload/upgrade/watch/download/chat`). Imports no torch until a fine-tune starts."""
