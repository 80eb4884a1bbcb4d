"""What models were asked: the off-path inference log writer, its spool,
dataset rows, and the stores."""
