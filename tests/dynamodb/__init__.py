"""DynamoDB-specific tests, and the DynamoDB Local server the test setup starts."""
