"""gemma_tool_use: teach Gemma 3 270M to call tools."""
