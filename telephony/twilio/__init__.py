"""Twilio Programmable Voice: Media Streams in and out of the agent, webhooks, signatures, call control."""
