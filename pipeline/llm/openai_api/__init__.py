"""Everything that speaks OpenAI's API: request shaping (`request`), parsing (`parse`), the
chat-completions backend (`backend`) and the Batch API runner (`batch`). The `openai` SDK is
imported only by `backend` and `batch`, so shaping a request stays cheap."""
