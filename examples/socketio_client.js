// The original Plumise Inference API README's Socket.IO streaming example, unchanged except that the token
// and the gateway URL come from the environment. Node 18+, in a folder whose package.json has
// "type": "module", after `npm install socket.io-client`:
//
//   PLUMISE_TOKEN=$(openai-proxy token --address 0x...) PLUMISE_URL=http://localhost:3200 node socketio_client.js
//
// compat_tests/test_socketio_js.py runs this file against a live gateway.
import io from 'socket.io-client';

const token = process.env.PLUMISE_TOKEN;
const url = process.env.PLUMISE_URL || 'http://localhost:3200';

const socket = io(`${url}/ws/inference`, {
  auth: { token },
});

socket.on('connect', () => {
  socket.emit('inference_stream', {
    model: 'meta-llama/Llama-3.1-8B',
    prompt: 'Write a story about AI.',
    max_tokens: 1024,
  });
});

socket.on('inference_chunk', (data) => {
  process.stdout.write(data.data);
});

socket.on('inference_complete', () => {
  console.log('\nDone!');
  socket.close();
});
