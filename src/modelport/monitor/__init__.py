"""What the server predicted, kept and checked: the prediction log's table and drift reports."""
