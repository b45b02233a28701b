// vc: the administrator CLI. Everything lives in VCCommands.
import VCCommands

@main
extension VC {}
