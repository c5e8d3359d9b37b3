"""The OpenAI wire format as pydantic models: the one definition of every request, response,
stream chunk, event and error shape the server reads or writes."""
