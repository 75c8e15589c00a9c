"""What clients call: the OpenAI and Agent endpoints, the LLM routing API, the hosted platform
endpoints, the control API, and the guard in front of them all."""
