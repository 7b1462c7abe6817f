// Connects to /ws/inference with PLUMISE_TOKEN and prints what a refused connection's `connect_error`
// carries, as JSON: {"message": <reason>, "data": {"code": <HTTP-like status>}}.
import io from 'socket.io-client';

const socket = io(`${process.env.PLUMISE_URL}/ws/inference`, {
  auth: { token: process.env.PLUMISE_TOKEN },
  reconnection: false,
});

socket.on('connect', () => {
  console.log(JSON.stringify({ connected: true }));
  socket.close();
});

socket.on('connect_error', (err) => {
  console.log(JSON.stringify({ message: err.message, data: err.data }));
  socket.close();
});
