"""Task families: each module holds its data, prompts and grader/checker."""
