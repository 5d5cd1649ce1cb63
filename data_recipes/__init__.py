"""Data recipes: turn public source files into the item tables embed reads and the labelled tables train reads."""
