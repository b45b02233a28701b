// vcnode: the node agent CLI. Everything lives in VCCommands.
import VCCommands

@main
extension VCNode {}
