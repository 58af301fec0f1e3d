"""What people read: result pages and the evaluation report."""
