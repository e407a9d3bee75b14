"""Telephony: SIP, SDP, RTP, codecs and the transports that carry calls into the agent."""
