import purerpc
from anvil_trio._proto.anvil.v1 import common_pb2 as anvil_dot_v1_dot_common__pb2
