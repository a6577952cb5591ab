"""Training corpora of the Markov name chains (usernames.txt, merchants.txt) and the script that wrote them."""
