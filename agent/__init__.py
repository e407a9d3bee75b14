"""Agent: call session, VAD, speech-to-text, dialogue, text-to-speech."""
