// Builds against the installed package only: encodes an apply with a zero-copy tensor,
// sends it over inproc://, decodes it, and checks the receiver saw the sender's buffer.
#include <cstdio>
#include <vector>

#include <zerocan/zerocan.h>

int main() {
  zmq::context_t context;
  zmq::socket_t sender(context, zmq::socket_type::pair);
  zmq::socket_t receiver(context, zmq::socket_type::pair);
  receiver.bind("inproc://consumer");
  sender.connect("inproc://consumer");

  std::vector<double> big(1 << 16, 1.5);
  const void* sent_at = big.data();
  zerocan::EnvelopeWriter writer;
  auto apply = writer.StartApply("sum", 1, 0);
  apply.arg(0).Write(std::move(big));
  zerocan::Tracker tracker = zerocan::Send(sender, writer.Finish());

  auto received = zerocan::Receive(receiver);
  zerocan::Message message = zerocan::Message::Decode(std::move(*received));
  zerocan::Tensor tensor = message.arg(0).As<zerocan::Tensor>();
  double sum = 0;
  for (double x : zerocan::TensorView<const double>(tensor)) sum += x;
  bool same = tensor.data().data() == sent_at;
  std::printf("consumer: %s(%s) = %.1f, zero-copy: %s\n", std::string(message.function()).c_str(),
              tensor.Describe().c_str(), sum, same ? "yes" : "NO");
  return same && sum == 1.5 * (1 << 16) ? 0 : 1;
}
