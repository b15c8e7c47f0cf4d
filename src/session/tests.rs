//! Turn-taking without a socket.
